"""Storage of the fleet controller: tables, migrations and the repository functions over them."""
