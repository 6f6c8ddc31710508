from edgetune.cli.main import main

main()
