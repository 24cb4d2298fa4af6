"""Training: cache a talking-head dataset once (:mod:`.prepare`), then fine-tune the emotion embedder
(:mod:`.embedder`) or the landmark guider (:mod:`.motion`) with one accelerate trainer (:mod:`.trainer`);
:mod:`.install` adds a trained component to a weights tree. See docs/training.md."""
