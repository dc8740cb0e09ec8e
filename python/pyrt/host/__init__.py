"""What pyrt leaves on the machine and who cleans it up: run state, places, the
reaper, stale cgroups, the caller's subordinate id ranges."""
