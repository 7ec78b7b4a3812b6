from mallops.entry import main

main()
