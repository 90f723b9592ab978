"""Media the job reads and writes around the engine: audio tracks (audio.py), video frames in (media_frames.py),
the MP4 out (mux.py). No torch."""
