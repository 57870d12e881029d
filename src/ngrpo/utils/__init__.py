"""Small utilities every layer may import; they import nothing from ngrpo outside `utils`.

- `errors`: `NgrpoError`, the error a user can fix (the CLI prints it on one line), and how a
  stopped run ends (`TrainingStopped`, `Interrupted`, their exit codes);
- `io`: directory writes that never leave a half-written target (checkpoints, `best/`), and
  `DiskError` when the disk refuses one;
- `oom`: out-of-memory errors that name the phase and the batch shape (`oom_phase`);
- `environment`: library versions, CPU and platform, for build records and reports.
"""
