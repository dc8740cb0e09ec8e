"""The OCI runtime spec made from the options: the document, seccomp, the assembler."""
