from tierscale.cli import main

main()
