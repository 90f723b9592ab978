"""The generation loop and its parts: guidance, timestep schedule, TeaCache, colour matching, audio windows, buckets."""
