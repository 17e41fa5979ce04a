"""Reports: results.json, report.md, plots and the data gallery."""
