"""Reports from stored records: tables, trade-off statistics, Markdown, figures."""
