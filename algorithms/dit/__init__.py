"""Diffusion Transformers (Hunyuan-DiT and HunyuanVideo) on captioned digit images and clips, or an image folder.

Reading order: ``rope.py``, ``layers.py``, ``backbone.py``, ``hunyuan_dit.py``, ``hunyuan_video.py``, ``models.py``
(the model); ``diffusion.py``, ``ema.py`` (objectives, samplers, guidance, EMA); ``text.py`` (captions);
``digits.py``, ``image_folder.py`` (data); ``train.py``, ``spec.py``, ``job.py`` (training, in one process and on the
platform); ``evaluate.py``, ``media.py`` (quality measures and sample files).
"""
