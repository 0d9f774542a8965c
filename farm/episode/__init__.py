"""What the studio hands in: storyboard, LoRA registry, their validation, engine cards, prompts."""
