from mixshare.cli import run

run()
