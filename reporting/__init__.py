"""What a person sees of a run while it goes: Prefect artifacts published best effort, and progress bars on a
terminal. Used by the tasks; neither is a task."""
