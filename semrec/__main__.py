from semrec.cli import main

main()
