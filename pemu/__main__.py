from pemu.system.main import main

main()
