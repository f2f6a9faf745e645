import nibabel as nib
import numpy as np

from cascade.data.nifti import write_segmentation


def test_segmentation_keeps_affine_header_codes_and_dtype(tmp_path, write_case) -> None:
    files = write_case(tmp_path / "in", shape=(12, 10, 8))
    reference = nib.load(files["t1"])
    reference.header.set_qform(reference.affine, code=1)
    reference.header.set_sform(reference.affine, code=2)
    labels = np.zeros((12, 10, 8), dtype=np.uint8)
    labels[3:6, 2:5, 1:4] = 4
    out = tmp_path / "out" / "case.nii.gz"
    write_segmentation(out, labels, reference.header, reference.affine)
    written = nib.load(out)
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), labels)
    np.testing.assert_allclose(written.affine, reference.affine)
    assert written.get_data_dtype() == np.uint8
    assert int(written.header["qform_code"]) == 1
    assert int(written.header["sform_code"]) == 2
    assert written.header.get_zooms() == reference.header.get_zooms()
    assert [path.name for path in out.parent.iterdir()] == ["case.nii.gz"]  # no temporary left
