from liploc.cli import main

main()
