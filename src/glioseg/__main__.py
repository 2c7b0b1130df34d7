from glioseg.cli import app

app(prog_name="glioseg")
