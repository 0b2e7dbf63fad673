from embedstore_cli.main import main

main()
