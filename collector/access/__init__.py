"""Who may do what: principals, API tokens, role grants and segregation of duties."""
