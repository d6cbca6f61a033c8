"""Model files on disk: what the models folder holds, the published files we know, and downloads.

`models_folder` resolves the network and the text tower (published weights, or generated ones
when they are missing), `registry` lists the published files with their checksums, and
`download` says how to fetch them; nothing is downloaded at run time.
"""
