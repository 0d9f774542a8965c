"""A run's life in Redis: keys, state and its Lua, dispatch, scheduling, budget, review, retakes."""
