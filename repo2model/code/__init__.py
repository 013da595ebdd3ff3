"""Code structure: tree-sitter units of a file version, and chunking a commit's patches into them."""
