"""Writing CTC results (maskNNN.tif + res_track.txt) and packaging CTC submissions."""
