"""Generated BraTS-like cases: the ellipsoid phantom (fast, for tests), the realistic MRI
simulator (template anatomy, contrast, tumor growth) and the dataset writer. Reading cases, real or
generated, is cascade.data's job; nothing there imports this package. The realistic simulator
needs the `synthesis` extra (nilearn, for the MNI152 template)."""
