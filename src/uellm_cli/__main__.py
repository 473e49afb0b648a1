from uellm_cli.cli import main

main()
