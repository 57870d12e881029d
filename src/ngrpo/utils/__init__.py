"""Small utilities every layer may import; they import nothing from ngrpo.

- `errors`: `NgrpoError`, the error a user can fix (the CLI prints it on one line);
- `io`: directory writes that never leave a half-written target (checkpoints, `best/`);
- `environment`: library versions, CPU and platform, for build records and reports.
"""
