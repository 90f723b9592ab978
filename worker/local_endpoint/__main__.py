from worker.local_endpoint.cli import main

if __name__ == "__main__":
    main()
