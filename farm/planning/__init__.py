"""Pure planning: a storyboard becomes a plan of content-addressed steps, its estimate, routes and JSON."""
