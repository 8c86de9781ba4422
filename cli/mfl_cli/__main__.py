from mfl_cli.cli import main

main()
