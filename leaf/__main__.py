from leaf.cli import main

main()
