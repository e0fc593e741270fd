"""What a researcher looks at: figures drawn from stored tables and tensors (the HTML report grows here)."""
