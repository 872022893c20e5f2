"""The networks, registered with timm: backbones' token sizes, CycleMLP, the token layers, the STD
students (`std_*`) and the DeiT baseline (`deit_*`), and the model catalog."""
