"""The main job on the embedded default: `decide demo`.

On a fresh machine with no network: render the phantom's splits, train the
compact baseline at `site-a` (v1: thresholds calibrated, evaluated with
DeLong intervals, promoted), then replay weeks of `site-b` feedback through
the monitor — its first week arrives without labels first: the label-free monitor finds the shift
before any label and asks for labels (the demo plays the person who sends the studies). AP portable
films at site-b make the site-a model call
Cardiomegaly on normal hearts; the monitor reports it, the engine decides,
treats, gates, escalates when needed and promotes — and everything is in the
registry. Then a new site, site-e, sends its first labelled week: its films come
through a look-up table that washes them out (an input-level shift no threshold or
head can undo); the monitor reports the Cardiomegaly false positives its
radiologists audit, the ladder climbs to F re-optimization, the shift diagnosis
points at the first dense block, and the re-trained stem and block 1 pass the gate
for site-e alone (held for a person when a check is underpowered: the demo plays
that person, named as such in the approval). Every expensive step is cached in the demo home (phantom pixels,
the trained weights with resumable checkpoints, pooled features), so a second
run on the same home finishes in seconds and changes nothing: its reports
are already ingested and decided.

The package: `config` (what runs), `run` (the main job, its final checks and report), `chapters` (the
label-free week and the new site, each playing the person the loop waits for).
"""

from decision.demo.config import DemoConfig
from decision.demo.run import DemoResult, run_demo, summary_rows

__all__ = ["DemoConfig", "DemoResult", "run_demo", "summary_rows"]
