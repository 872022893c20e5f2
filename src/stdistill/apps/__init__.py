"""What a user runs: the command line, `eval`, `export`, `predict`, the head table, `fold`,
`teacher-pass`, `profile` and `quickstart`."""
