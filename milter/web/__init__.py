"""The auditors' web view: read-only for auditors, quarantine release and delete for admins."""
