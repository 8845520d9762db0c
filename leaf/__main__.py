from leaf.cli import main

if __name__ == "__main__":  # python -m leaf (imported, e.g. by the docs build, it does nothing)
    main()
