"""The network sizes of the reduced setups, each defined once: the UNet options of the CPU variant
of every image config (configs/images.py 'tiny', bench/common.py 'tiny'), of the real-image
benchmark (configs/bench64.py) and of its 2-core CPU schedule. The paper's full-size teachers are
ibmd_jax.models.unet.PRESETS. Options not given keep the image configs' ADM defaults."""

# Every block kind (res-blocks with up/down-sampling, attention, skip connections) on two levels
# (16x16 and 8x8 on 16x16 crops); attention at ds 2 with 2 heads of 32 channels; 32 channels
# because GroupNorm uses 32 groups.
TINY = dict(model_channels=32, num_res_blocks=1, channel_mult=(1, 2), attention_resolutions=(2,),
            num_heads=2, num_head_channels=-1, dropout=0.0)

# The real-image benchmark's teacher: 64 channels, levels at 64/32/16 on 64x64 crops, attention at
# 16 and 8 (downsampling factors 4 and 8).
BENCH64 = dict(model_channels=64, out_channels=3, num_res_blocks=2, channel_mult=(1, 2, 2),
               attention_resolutions=(4, 8), num_heads=4, num_head_channels=32,
               num_heads_upsample=-1, dropout=0.0, num_classes=None, use_scale_shift_norm=True,
               resblock_updown=True)

# The benchmark's 2-core CPU schedule at 32x32 (bench64 'cpu32'): levels 32/16/8, attention at 8.
CPU32 = dict(model_channels=32, num_res_blocks=1, channel_mult=(1, 1, 2),
             attention_resolutions=(4,), num_heads=2, num_head_channels=-1, dropout=0.0)
