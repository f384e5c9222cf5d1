from raylm.cli import console

console()
