from outwatch.cli import main

main()
