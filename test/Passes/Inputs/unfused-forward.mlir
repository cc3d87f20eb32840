// The tiny model as imported (unfused): input of recurrent.test.
module attributes {tnlm.config = {bos_token_id = 1 : i64, decoder_attention_heads = 2 : i64, decoder_embed_dim = 64 : i64, decoder_layers = 2 : i64, dtype = "f32", eos_token_id = 2 : i64, glu_dim = 128 : i64, hidden_dim = 64 : i64, linear_act_fun = "silu", linear_use_lrpe_list = array<i64: 1, 0>, name = "tiny", no_scale_embedding = false, norm_type = "simplermsnorm", pad_token_id = 0 : i64, tie_word_embeddings = true, vocab_size = 256 : i64}} {
  func.func @forward(%arg0: tensor<?x?xi32>, %arg1: tensor<256x64xf32> {tnlm.param = "model.embed_tokens.weight"}, %arg2: tensor<256x64xf32> {tnlm.param = "model.layers.0.token_mixer.qkvu_proj.weight"}, %arg3: tensor<64x64xf32> {tnlm.param = "model.layers.0.token_mixer.out_proj.weight"}, %arg4: tensor<2x1x32xf32> {tnlm.param = "model.layers.0.token_mixer.lrpe.theta"}, %arg5: tensor<128x64xf32> {tnlm.param = "model.layers.0.channel_mixer.l1.weight"}, %arg6: tensor<128x64xf32> {tnlm.param = "model.layers.0.channel_mixer.l2.weight"}, %arg7: tensor<64x128xf32> {tnlm.param = "model.layers.0.channel_mixer.l3.weight"}, %arg8: tensor<256x64xf32> {tnlm.param = "model.layers.1.token_mixer.qkvu_proj.weight"}, %arg9: tensor<64x64xf32> {tnlm.param = "model.layers.1.token_mixer.out_proj.weight"}, %arg10: tensor<128x64xf32> {tnlm.param = "model.layers.1.channel_mixer.l1.weight"}, %arg11: tensor<128x64xf32> {tnlm.param = "model.layers.1.channel_mixer.l2.weight"}, %arg12: tensor<64x128xf32> {tnlm.param = "model.layers.1.channel_mixer.l3.weight"}) -> tensor<?x?x256xf32> {
    %0 = tnlm.embedding %arg0, %arg1 {scale = 8.000000e+00 : f32} : (tensor<?x?xi32>, tensor<256x64xf32>) -> tensor<?x?x64xf32>
    %1 = tnlm.srms_norm %0 : tensor<?x?x64xf32>
    %2 = tnlm.linear %1, %arg2 : (tensor<?x?x64xf32>, tensor<256x64xf32>) -> tensor<?x?x256xf32>
    %3:4 = tnlm.split %2 : tensor<?x?x256xf32> -> tensor<?x?x64xf32>, tensor<?x?x64xf32>, tensor<?x?x64xf32>, tensor<?x?x64xf32>
    %4 = tnlm.silu %3#0 : tensor<?x?x64xf32>
    %5 = tnlm.silu %3#1 : tensor<?x?x64xf32>
    %6 = tnlm.split_heads %4 : tensor<?x?x64xf32> -> tensor<?x?x2x32xf32>
    %7 = tnlm.split_heads %5 : tensor<?x?x64xf32> -> tensor<?x?x2x32xf32>
    %8 = tnlm.split_heads %3#2 : tensor<?x?x64xf32> -> tensor<?x?x2x32xf32>
    %9 = tnlm.lrpe %6, %arg4 : tensor<?x?x2x32xf32>, tensor<2x1x32xf32> -> tensor<?x?x2x64xf32>
    %10 = tnlm.lrpe %7, %arg4 : tensor<?x?x2x32xf32>, tensor<2x1x32xf32> -> tensor<?x?x2x64xf32>
    %11 = tnlm.decay_linear_attention %9, %10, %8 {slopes = array<f32: 0.0625006258, 0.00390628912>} : (tensor<?x?x2x64xf32>, tensor<?x?x2x64xf32>, tensor<?x?x2x32xf32>) -> tensor<?x?x2x32xf32>
    %12 = tnlm.merge_heads %11 : tensor<?x?x2x32xf32> -> tensor<?x?x64xf32>
    %13 = tnlm.srms_norm %12 : tensor<?x?x64xf32>
    %14 = tnlm.mul %3#3, %13 : tensor<?x?x64xf32>
    %15 = tnlm.linear %14, %arg3 : (tensor<?x?x64xf32>, tensor<64x64xf32>) -> tensor<?x?x64xf32>
    %16 = tnlm.add %0, %15 : tensor<?x?x64xf32>
    %17 = tnlm.srms_norm %16 : tensor<?x?x64xf32>
    %18 = tnlm.sglu %17, %arg5, %arg6, %arg7 : (tensor<?x?x64xf32>, tensor<128x64xf32>, tensor<128x64xf32>, tensor<64x128xf32>) -> tensor<?x?x64xf32>
    %19 = tnlm.add %16, %18 : tensor<?x?x64xf32>
    %20 = tnlm.srms_norm %19 : tensor<?x?x64xf32>
    %21 = tnlm.linear %20, %arg8 : (tensor<?x?x64xf32>, tensor<256x64xf32>) -> tensor<?x?x256xf32>
    %22:4 = tnlm.split %21 : tensor<?x?x256xf32> -> tensor<?x?x64xf32>, tensor<?x?x64xf32>, tensor<?x?x64xf32>, tensor<?x?x64xf32>
    %23 = tnlm.silu %22#0 : tensor<?x?x64xf32>
    %24 = tnlm.silu %22#1 : tensor<?x?x64xf32>
    %25 = tnlm.split_heads %23 : tensor<?x?x64xf32> -> tensor<?x?x2x32xf32>
    %26 = tnlm.split_heads %24 : tensor<?x?x64xf32> -> tensor<?x?x2x32xf32>
    %27 = tnlm.split_heads %22#2 : tensor<?x?x64xf32> -> tensor<?x?x2x32xf32>
    %28 = tnlm.decay_linear_attention %25, %26, %27 {slopes = array<f32: 6.250000e-07, 3.906250e-08>} : (tensor<?x?x2x32xf32>, tensor<?x?x2x32xf32>, tensor<?x?x2x32xf32>) -> tensor<?x?x2x32xf32>
    %29 = tnlm.merge_heads %28 : tensor<?x?x2x32xf32> -> tensor<?x?x64xf32>
    %30 = tnlm.srms_norm %29 : tensor<?x?x64xf32>
    %31 = tnlm.mul %22#3, %30 : tensor<?x?x64xf32>
    %32 = tnlm.linear %31, %arg9 : (tensor<?x?x64xf32>, tensor<64x64xf32>) -> tensor<?x?x64xf32>
    %33 = tnlm.add %19, %32 : tensor<?x?x64xf32>
    %34 = tnlm.srms_norm %33 : tensor<?x?x64xf32>
    %35 = tnlm.sglu %34, %arg10, %arg11, %arg12 : (tensor<?x?x64xf32>, tensor<128x64xf32>, tensor<128x64xf32>, tensor<64x128xf32>) -> tensor<?x?x64xf32>
    %36 = tnlm.add %33, %35 : tensor<?x?x64xf32>
    %37 = tnlm.srms_norm %36 : tensor<?x?x64xf32>
    %38 = tnlm.lm_head %37, %arg1 : (tensor<?x?x64xf32>, tensor<256x64xf32>) -> tensor<?x?x256xf32>
    return %38 : tensor<?x?x256xf32>
  }
  func.func @loss(%arg0: tensor<?x?xi32>, %arg1: tensor<?x?xi32>, %arg2: tensor<256x64xf32> {tnlm.param = "model.embed_tokens.weight"}, %arg3: tensor<256x64xf32> {tnlm.param = "model.layers.0.token_mixer.qkvu_proj.weight"}, %arg4: tensor<64x64xf32> {tnlm.param = "model.layers.0.token_mixer.out_proj.weight"}, %arg5: tensor<2x1x32xf32> {tnlm.param = "model.layers.0.token_mixer.lrpe.theta"}, %arg6: tensor<128x64xf32> {tnlm.param = "model.layers.0.channel_mixer.l1.weight"}, %arg7: tensor<128x64xf32> {tnlm.param = "model.layers.0.channel_mixer.l2.weight"}, %arg8: tensor<64x128xf32> {tnlm.param = "model.layers.0.channel_mixer.l3.weight"}, %arg9: tensor<256x64xf32> {tnlm.param = "model.layers.1.token_mixer.qkvu_proj.weight"}, %arg10: tensor<64x64xf32> {tnlm.param = "model.layers.1.token_mixer.out_proj.weight"}, %arg11: tensor<128x64xf32> {tnlm.param = "model.layers.1.channel_mixer.l1.weight"}, %arg12: tensor<128x64xf32> {tnlm.param = "model.layers.1.channel_mixer.l2.weight"}, %arg13: tensor<64x128xf32> {tnlm.param = "model.layers.1.channel_mixer.l3.weight"}) -> tensor<f32> {
    %0 = call @forward(%arg0, %arg2, %arg3, %arg4, %arg5, %arg6, %arg7, %arg8, %arg9, %arg10, %arg11, %arg12, %arg13) : (tensor<?x?xi32>, tensor<256x64xf32>, tensor<256x64xf32>, tensor<64x64xf32>, tensor<2x1x32xf32>, tensor<128x64xf32>, tensor<128x64xf32>, tensor<64x128xf32>, tensor<256x64xf32>, tensor<64x64xf32>, tensor<128x64xf32>, tensor<128x64xf32>, tensor<64x128xf32>) -> tensor<?x?x256xf32>
    %1 = tnlm.cross_entropy %0, %arg1 : (tensor<?x?x256xf32>, tensor<?x?xi32>) -> tensor<f32>
    return %1 : tensor<f32>
  }
}

