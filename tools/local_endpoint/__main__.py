# Spawned worker processes re-import this module as __mp_main__; the guard keeps them from
# importing the server stack.
if __name__ == "__main__":
    from tools.local_endpoint.cli import main

    main()
