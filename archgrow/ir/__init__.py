"""archgrow's intermediate representation of widths: layouts (segments of width variables tied by
union-find), the roles of new entries, and the bindings analysis records.  Everything else builds
on these; they import nothing from the rest of archgrow."""
