from mallops.cli import main

main()
