"""Processing algorithms: one per module, each a thin wrapper around one engine call.

The provider discovers every ``GullySegAlgorithm`` subclass defined in the modules of this
package, so adding an algorithm means adding one file.
"""
