"""The visual-prompt detector: Grounding DINO with box-exemplar prompts in place of text (DINO-R1).

Model API (``workbench.model.detector.VisualPromptDetector``)::

    feats = model.extract_features(images, pixel_mask)          # backbone + neck, cacheable
    prompt = model.encode_prompts(feats, prompt_set)            # one embedding per exemplar box,
                                                                # averaged per prompt (class)
    out = model.detect(feats, prompt.classes, targets=None)     # enhancer, VGQS, decoder, heads
    out = model(images, pixel_mask, prompt_set, targets=None)   # the three above in one call
    scores = model.selection_logits(feats, prompt.classes)      # [B, T] max-over-prompts encoder
                                                                # logits of every token (no decoder)
    scores = model.selection_logits(feats, classes, index)      # [B, Q] the same at tokens index

``images`` are ``[B, 3, H, W]`` float32 RGB in [0, 1] (the model normalises them itself),
``pixel_mask`` ``[B, H, W]`` bool True on real pixels. ``prompt_set.image_index`` indexes the images
of ``feats``. ``targets`` (labels = prompt indices, see ``data.prompts.assign_targets``) switch on
the contrastive denoising queries in training.

Output dict, DETR-shaped; boxes are normalised cxcywh, logits raw (before sigmoid). ``B`` images,
``Q`` queries, ``U`` prompts, ``L`` decoder layers, ``T`` encoder tokens::

    pred_logits     [B, Q, U]   last decoder layer: query . prompt / sqrt(d) + bias
    pred_boxes      [B, Q, 4]
    aux_outputs     list of L-1 dicts {pred_logits, pred_boxes}: decoder layers 0 .. L-2
    enc_outputs     {pred_logits [B, Q, U], pred_boxes [B, Q, 4]}: the Q selected encoder proposals
    select_index    [B, Q] int64: token indices picked by visual-guided query selection, in
                    descending order of select_logits (query i of every layer comes from token
                    select_index[:, i])
    select_logits   [B, Q]: max-over-prompts encoder logit of each selected token, with gradient
                    (sigmoid of it is the query's objectness, which GRQO's KL regularises)
    dn_outputs      None, or (training with targets and denoising on):
                    {pred_logits [L, B, D, U], pred_boxes [L, B, D, 4],
                     positive_index: list of B int64 tensors  -- dn queries that reconstruct a box,
                     positive_target: list of B int64 tensors -- the target box each one rebuilds,
                     negative_index: list of B int64 tensors  -- dn queries that must say "nothing",
                     num_groups: int}
    prompt_embeddings {exemplars [E, d], classes [U, d]}: before the feature enhancer
    image_features  the ImageFeatures of ``model(...)`` (backbone + neck), with gradient
"""
