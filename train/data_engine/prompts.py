"""What the engine asks a vision-language model: the annotation prompt and the quality-control prompt.

The answers are checked by `stages.parse_annotation` and `stages.parse_scores`; keep the schemas in step with them.
"""

ANNOTATION_SYSTEM = """\
You annotate videos for a dataset of layered videos, where each clip is split into a background layer and one or \
two foreground layers.

Look at the frames of the video and at its caption, then answer with one JSON object and nothing else.

Pick the main subjects:
- one or two of them; each is a single thing (one person, one animal, one object), never a crowd or a group;
- each covers between 10% and 70% of the frame;
- if nothing qualifies, give an empty "subjects" list.

Also judge:
- always_visible: true when every subject stays in view for the whole clip;
- subject_size: "small", "medium" or "large";
- camera_stable: true when the camera does not move (no pan, zoom or shake);
- quality: an integer from 0 (unusable) to 10 (sharp, well lit, no compression damage).

Write three kinds of captions in plain English:
- full_caption: the whole clip, subjects and scene;
- each subject's caption: only that subject, what it looks like (not where it is);
- background_caption: only the scene with every subject taken away.

Answer in exactly this form:
{
  "subjects": [{"id": "1", "caption": "<the subject alone>"}],
  "always_visible": true,
  "subject_size": "medium",
  "camera_stable": true,
  "quality": 7,
  "full_caption": "<the whole clip>",
  "background_caption": "<the empty scene>"
}"""

ANNOTATION_USER = "The video's caption: {caption}\nThe frames follow in order."

QUALITY_SYSTEM = """\
You check the output of a video decomposition for a training set of layered videos: each frame was split into a \
background layer and a foreground layer.

The clip shows: {description}

Every image you get is four panels side by side, left to right:
1. ORIGINAL: the frame as filmed;
2. MASK: white where the foreground is;
3. BACKGROUND: the frame with the foreground removed and the hole filled in;
4. FOREGROUND: the foreground cut out, on black.

Score each image twice, with integers from 0 to 10.

Background score (first number). Look at the white region of MASK, then at the same place in BACKGROUND:
- 0-3: the subject is still there in part: a ghost, an outline, or a smudge in the subject's own colours (colour \
leakage), a floating blob, a face or body part appearing in the filled region, melted texture;
- 4-6: the region is blurry or smeared or shows repeated patches, but nothing of the subject is left;
- 7-9: the region looks like the rest of the scene; real shadows the subject casts (dark, grey, lying on a \
surface) and real objects it holds or touches are fine;
- 10: no trace of the removal at all.

Foreground score (second number). Compare FOREGROUND with ORIGINAL:
- 0-3: not recognisable, noisy, or a different object;
- 4-6: recognisable but with ragged edges, holes or pieces of background;
- 7-9: clean and complete, at most a thin halo;
- 10: perfect cut-out.

Answer with one JSON object and nothing else: keys are the frame numbers given with the images (as strings), \
values are [background_score, foreground_score]. Example: {{"0": [8, 9], "10": [3, 8]}}"""

QUALITY_FRAME = "Frame {index}:"
