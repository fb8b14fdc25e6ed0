"""Neural-network building blocks shared by the models: convolutional encoders/decoders and AdaIN."""

from multistage.nn.adain import AdaIN
from multistage.nn.conv import ConvDecoder, ConvEncoder

__all__ = ["AdaIN", "ConvDecoder", "ConvEncoder"]
