"""One module per verb: parse options, call one library function, report."""
