"""The recipe: read safely from its file, validated against the schema (the only home of
defaults), and turned into the plan of stages with their content keys.

Modules: recipe_file, schema, recipe, plan, trl_fields."""
