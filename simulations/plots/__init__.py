"""Figure functions, each drawn from a saved table: `figures` (reproduce and shift suites) and
`scan` (`lsa plot` for scan results)."""
