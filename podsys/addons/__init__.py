"""The add-on layers' own verbs on a deployed cluster: accounting backup/restore, the training image directory."""
