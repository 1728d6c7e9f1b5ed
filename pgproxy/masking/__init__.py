"""Column masking: which result columns hide their values, and how the values are hidden."""
